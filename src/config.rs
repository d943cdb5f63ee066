//! The daemon's whole configuration tree: one TOML file plus `GLIMPSE_<SECTION>__<KEY>`
//! environment overrides, with defaults good enough that `glimpse run` alone works on a laptop
//! with a webcam and a local broker. Every section is owned by the component it configures
//! (Vector's convention); this file only assembles them, applies overrides and validates.
//!
//! Errors name the file and the dotted key (`mqtt.qos`), in one line, so a daemon that cannot
//! start says why and exits 2.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mqtt::config::MqttConfig;
use crate::source::SourceConfig;
use crate::vision::engine::{Device, EngineKind, EngineOptions, Precision};
use crate::vision::spec::ResizeMode;

/// Where `glimpse run` looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/glimpse/glimpse.toml";
/// Prefix of environment overrides: `GLIMPSE_MQTT__URL=mqtt://broker:1883` sets `mqtt.url`.
pub const ENV_PREFIX: &str = "GLIMPSE_";
/// Top-level keys, which have no section: `GLIMPSE_STATE_DIR` sets `state_dir`. Listed by name
/// because other `GLIMPSE_X` variables (`GLIMPSE_MODEL`, `GLIMPSE_CONFIG`) are command-line
/// defaults, not configuration keys.
pub const TOP_LEVEL_ENV_KEYS: &[&str] = &["state_dir"];
/// Most backbone threads a config may ask for: more than any board has cores is a typo.
pub const MAX_MODEL_THREADS: usize = 64;
/// Most recent frames kept for `frame_id` labeling (about 10 KB each: 40 MB at most).
pub const MAX_RECENT_FRAMES: usize = 4096;
/// The levels `log.level` (and each `module=level` directive in it) may name.
pub const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config {path}: key `{key}`: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// `[model]`: the backbone and the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Model manifest (TOML, see docs/models.md).
    pub manifest: PathBuf,
    /// Backbone threads; 0 = one per core, at most 4.
    pub threads: usize,
    /// `stretch` (whole image, the default) or `center-crop`.
    pub resize: ResizeMode,
    /// Head file to start with; default `<state_dir>/head.glh`. Without one, predictions carry
    /// the ImageNet top-k only.
    pub head: Option<PathBuf>,
    /// How many classes each prediction lists.
    pub top_k: usize,
    /// `tract` (default) or `onnxruntime` (docs/deploy.md "onnxruntime").
    pub engine: EngineKind,
    /// `cpu` (default), `cuda` or `tensorrt` (the last two: onnxruntime only).
    pub device: Device,
    /// `fp32` (default) or `fp16` (TensorRT, or tract on a CPU with asimdhp).
    pub precision: Precision,
    /// tract only: run convolutions channel-last (docs/performance.md "tract tuning").
    pub tract_nhwc: bool,
    /// libonnxruntime.so for engine = "onnxruntime"; default ORT_DYLIB_PATH, else the library
    /// path.
    pub onnxruntime_library: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            manifest: PathBuf::from("models/mobilenet_v2_1.0_224.toml"),
            threads: 0,
            resize: ResizeMode::Stretch,
            head: None,
            top_k: 3,
            engine: EngineKind::Tract,
            device: Device::Cpu,
            precision: Precision::Fp32,
            tract_nhwc: false,
            onnxruntime_library: None,
        }
    }
}

/// `[pipeline]`: how frames flow from the source to the backbone.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Skip a frame whose mean absolute difference from the last processed frame (on a 32x32
    /// grey thumbnail, 0..255) is below this; 0 disables skipping.
    pub skip_unchanged_below: f32,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            skip_unchanged_below: 0.0,
        }
    }
}

/// `[learning]`: teaching over MQTT (docs/learning.md): sample limits, quotas, retraining.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearningConfig {
    /// Accept samples and commands at all; off = they are rejected with a reason.
    pub enabled: bool,
    /// Retrain after this many newly accepted samples (or a tenth of the store, when more);
    /// 0 = only on `cmd/retrain` (no automatic retraining at all).
    pub retrain_after: u32,
    /// Also retrain when samples stopped arriving for this long and some are new; 0 = off.
    pub retrain_quiet_ms: u64,
    /// Head versions kept besides the active one (older ones are deleted, rows and files).
    pub keep_heads: usize,
    /// A label the active head does not know is imprinted into it (served at once, refined by
    /// the next training) when it has this many samples; 0 = wait for the training.
    pub imprint_after: u64,
    /// Threads one retrain uses: 2 fits the deployed head on a second thread while the gate's
    /// candidate trains (both at the learner's low priority, so frames still come first); 1 =
    /// one after the other.
    pub train_threads: usize,
    /// Largest sample payload (image bytes, or the whole JSON message), in bytes.
    pub max_sample_bytes: usize,
    /// Largest sample image, in pixels (width * height), checked before decoding.
    pub max_sample_pixels: u64,
    /// Samples kept per label at most; more are rejected (`forget` frees room).
    pub max_per_label: u64,
    /// Samples kept in total at most.
    pub max_total: u64,
    /// Distinct labels at most.
    pub max_labels: u64,
    /// Recent frames (embedding + thumbnail) kept so an operator can label `frame_id`.
    pub recent_frames: usize,
    /// Longest side of the stored JPEG thumbnails, in pixels.
    pub thumbnail_px: u32,
    /// The acceptance gate: a new head may score at most this much below the active one on the
    /// same validation samples.
    pub gate_tolerance: f32,
    /// Validation fraction of the fixed-seed stratified split.
    pub validation_split: f32,
    /// Seed of the split.
    pub seed: u64,
    /// Fleet group (docs/fleet.md): also take samples and commands on `{p}/group/{group}/...`
    /// and adopt the group's head.
    pub group: Option<String>,
    /// This member trains on the group's samples and publishes its head to the group; the
    /// others store the samples and adopt that head (they train only on `cmd/retrain`).
    pub group_leader: bool,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retrain_after: 10,
            retrain_quiet_ms: 1000,
            keep_heads: 10,
            imprint_after: 5,
            train_threads: 2,
            max_sample_bytes: 4 << 20,
            max_sample_pixels: 25_000_000,
            max_per_label: 5_000,
            max_total: 50_000,
            max_labels: 200,
            recent_frames: 64,
            thumbnail_px: 96,
            gate_tolerance: 0.02,
            validation_split: 0.2,
            seed: 123,
            group: None,
            group_leader: false,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error | warn | info | debug | trace; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// The whole configuration tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Samples, head versions and the default head live here. Default: `$STATE_DIRECTORY`
    /// (set by systemd's `StateDirectory=`), else `~/.local/state/glimpse`.
    pub state_dir: Option<PathBuf>,
    pub model: ModelConfig,
    pub source: SourceConfig,
    /// The broker link, topics, publish policy (`[mqtt.publish]`) and Home Assistant discovery.
    pub mqtt: MqttConfig,
    pub pipeline: PipelineConfig,
    pub learning: LearningConfig,
    pub log: LogConfig,
    /// `(dotted key, variable)` for each key a `GLIMPSE_*` variable set: messages about those
    /// keys name the variable, since the file may not even mention them.
    #[serde(skip)]
    pub set_by_env: Vec<(String, String)>,
}

impl Config {
    /// `message` with each key a `GLIMPSE_*` variable set written as `VARIABLE (key)`, so that a
    /// later check (the model file, the state directory) names where the bad value came from.
    pub fn name_variables(&self, message: &str) -> String {
        let mut out = message.to_string();
        for (key, var) in &self.set_by_env {
            if out.contains(key.as_str()) && !out.contains(var.as_str()) {
                out = out.replacen(key.as_str(), &format!("{var} ({key})"), 1);
            }
        }
        out
    }

    /// The backbone engine `[model]` asks for; TensorRT caches its engines in the state
    /// directory.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            engine: self.model.engine,
            device: self.model.device,
            precision: self.model.precision,
            onnxruntime_library: self.model.onnxruntime_library.clone(),
            cache_dir: Some(self.state_dir().join("tensorrt")),
            tract_nhwc: self.model.tract_nhwc,
        }
    }

    /// The resolved state directory.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
            // systemd may pass several colon-separated directories; the first is ours.
            let first = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            return PathBuf::from(first);
        }
        if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home).join(".local/state/glimpse");
        }
        PathBuf::from("glimpse-state")
    }

    /// The head file the daemon starts with.
    pub fn head_path(&self) -> PathBuf {
        self.model
            .head
            .clone()
            .unwrap_or_else(|| self.state_dir().join("head.glh"))
    }
}

/// Loads the configuration. `path = None` means the default path, which may be absent (then
/// defaults apply); an explicit path must exist. `env` is the process environment (a parameter
/// so tests need not touch the real one).
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let (file, text) = match path {
        Some(p) => (
            p.to_path_buf(),
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
        ),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            match std::fs::read_to_string(&p) {
                Ok(text) => (p, text),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => (p, String::new()),
                Err(source) => return Err(ConfigError::Read { path: p, source }),
            }
        }
    };
    parse(&file, &text, env)
}

/// Parses config text (from `file`, for messages), applies environment overrides and validates.
pub fn parse(
    file: &Path,
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|err: toml::de::Error| ConfigError::Syntax {
                path: file.to_path_buf(),
                message: one_line(&err.to_string()),
            })?;
    let overrides = apply_env_overrides(&mut table, env)?;
    let config: Result<Config, _> = serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|err| {
            let key = err.path().to_string();
            ConfigError::Key {
                path: file.to_path_buf(),
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message: one_line(&err.into_inner().to_string()),
            }
        });
    let mut config = config.map_err(|e| blame_variable(e, &overrides))?;
    validate(file, &config).map_err(|e| blame_variable(e, &overrides))?;
    config.mqtt.group = config.learning.group.clone();
    config.set_by_env = overrides;
    Ok(config)
}

/// Rewrites an error about a key that a `GLIMPSE_*` variable set so that it names the variable,
/// not the file (which may not even exist). `overrides` maps dotted keys to variable names.
fn blame_variable(err: ConfigError, overrides: &[(String, String)]) -> ConfigError {
    let culprit = |text: &str| {
        overrides
            .iter()
            .find(|(key, _)| {
                text == key
                    || text.starts_with(&format!("{key}."))
                    || text.starts_with(&format!("{key}:"))
            })
            .map(|(key, var)| (key.clone(), var.clone()))
    };
    match err {
        ConfigError::Key { key, message, path } => match culprit(&key) {
            Some((_, var)) => ConfigError::Env {
                var,
                message: format!("key `{key}`: {message}"),
            },
            None => ConfigError::Key { path, key, message },
        },
        ConfigError::Invalid { message, path } => match culprit(&message) {
            Some((_, var)) => ConfigError::Env { var, message },
            None => ConfigError::Invalid { path, message },
        },
        other => other,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Applies `GLIMPSE_SECTION__KEY=value` overrides. The value is read as a TOML value when it
/// parses as one (numbers, booleans, arrays), else as a string; quote it (`'"123"'`) to force a
/// string. Other variables without `__` (such as `GLIMPSE_MODEL`, used by the offline commands)
/// are not configuration keys and are ignored here; the top-level keys ([`TOP_LEVEL_ENV_KEYS`])
/// are the exception. Returns `(dotted key, variable)` for each override applied, so errors
/// about those keys can name the variable.
pub fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let is_top_level = |name: &str| {
        TOP_LEVEL_ENV_KEYS
            .iter()
            .any(|key| key.eq_ignore_ascii_case(name))
    };
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| {
            k.strip_prefix(ENV_PREFIX)
                .is_some_and(|name| name.contains("__") || is_top_level(name))
        })
        .collect();
    vars.sort();
    let mut applied = Vec::new();
    for (var, raw) in vars {
        let keys: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|k| k.to_ascii_lowercase())
            .collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(ConfigError::Env {
                var,
                message: "empty key segment".into(),
            });
        }
        let value = parse_env_value(&raw);
        let mut node = &mut *table;
        for key in &keys[..keys.len() - 1] {
            let entry = node
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("`{key}` is not a section"),
                    })
                }
            };
        }
        node.insert(keys[keys.len() - 1].clone(), value);
        applied.push((keys.join("."), var));
    }
    Ok(applied)
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

/// Checks that need more than types; each component validates its own section and its error
/// names the dotted key.
fn validate(file: &Path, config: &Config) -> Result<(), ConfigError> {
    let key = |key: &str, message: &str| ConfigError::Key {
        path: file.to_path_buf(),
        key: key.into(),
        message: message.into(),
    };
    if config
        .state_dir
        .as_ref()
        .is_some_and(|dir| dir.as_os_str().is_empty())
    {
        return Err(key(
            "state_dir",
            "is empty: give a directory, or leave it unset for the default",
        ));
    }
    if config.model.top_k == 0 {
        return Err(key("model.top_k", "must be at least 1"));
    }
    config
        .engine_options()
        // Checked against this machine's CPU: the config is validated where it runs.
        .validate(crate::vision::engine::cpu_has_fp16())
        .map_err(|e| key(e.key, &e.message))?;
    if config.model.threads > MAX_MODEL_THREADS {
        return Err(key(
            "model.threads",
            &format!("must be 0 (one per core, at most 4) or 1..={MAX_MODEL_THREADS}"),
        ));
    }
    validate_log_level(&config.log.level).map_err(|m| key("log.level", &m))?;
    // NaN is refused too (TOML accepts `nan`): it is no threshold at all.
    let threshold = config.pipeline.skip_unchanged_below;
    if threshold.is_nan() || threshold < 0.0 {
        return Err(key(
            "pipeline.skip_unchanged_below",
            "must be 0 (off) or positive",
        ));
    }
    let learning = &config.learning;
    if learning.max_sample_bytes == 0 || learning.max_sample_bytes > config.mqtt.max_packet_bytes {
        return Err(key(
            "learning.max_sample_bytes",
            "must be at least 1 and at most mqtt.max_packet_bytes (larger samples never arrive)",
        ));
    }
    if learning.max_sample_pixels == 0 {
        return Err(key("learning.max_sample_pixels", "must be at least 1"));
    }
    if learning.max_per_label == 0 || learning.max_total == 0 || learning.max_labels < 2 {
        return Err(key(
            "learning.max_per_label/max_total/max_labels",
            "quotas must be at least 1 (max_labels at least 2)",
        ));
    }
    if learning.recent_frames > MAX_RECENT_FRAMES {
        return Err(key(
            "learning.recent_frames",
            &format!("must be at most {MAX_RECENT_FRAMES} (each frame holds about 10 KB)"),
        ));
    }
    if !(1..=2).contains(&learning.train_threads) {
        return Err(key("learning.train_threads", "must be 1 or 2"));
    }
    if !(8..=512).contains(&learning.thumbnail_px) {
        return Err(key("learning.thumbnail_px", "must be between 8 and 512"));
    }
    if !(0.0..=1.0).contains(&learning.gate_tolerance) {
        return Err(key("learning.gate_tolerance", "must be between 0 and 1"));
    }
    if let Some(group) = &learning.group {
        crate::mqtt::topics::validate_level("group", group)
            .map_err(|e| key("learning.group", &e.to_string()))?;
    }
    if !(0.0..0.9).contains(&learning.validation_split) {
        return Err(key("learning.validation_split", "must be in [0, 0.9)"));
    }
    let invalid = |message: String| ConfigError::Invalid {
        path: file.to_path_buf(),
        message,
    };
    config
        .source
        .validate()
        .map_err(|e| invalid(e.to_string()))?;
    config
        .source
        .uri
        .parse::<crate::source::SourceUri>()
        .map_err(|e| invalid(format!("source.uri: {e}")))?;
    config.mqtt.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// `log.level` is a level (`info`) or env_logger directives (`warn,glimpse::mqtt=debug`). A bare
/// word that is no level would be read by env_logger as a module name and silence everything
/// else, errors included, so it is refused here.
pub fn validate_log_level(spec: &str) -> Result<(), String> {
    let is_level = |l: &str| LOG_LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l.trim()));
    let directives: Vec<&str> = spec.split(',').map(str::trim).collect();
    if directives.iter().all(|d| d.is_empty()) {
        return Err(format!("is empty; use one of {}", LOG_LEVELS.join(", ")));
    }
    for directive in directives.into_iter().filter(|d| !d.is_empty()) {
        let level = match directive.split_once('=') {
            Some((module, level)) if !module.trim().is_empty() => level,
            Some(_) => "",
            None => directive,
        };
        if !is_level(level) {
            return Err(format!(
                "{directive:?} is not a level; use one of {} (or module=level directives)",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_sections_nested_sections_and_top_level_keys() {
        let config = parse(
            Path::new("t.toml"),
            "[mqtt]\ndevice_id = 'file'\n",
            env(&[
                ("GLIMPSE_MQTT__DEVICE_ID", "fromenv"),
                ("GLIMPSE_MQTT__QOS", "2"),
                ("GLIMPSE_MQTT__PUBLISH__MODE", "on_change"),
                ("GLIMPSE_STATE_DIR", "/var/lib/x"),
                ("GLIMPSE_MODEL", "ignored.toml"),
                ("OTHER__KEY", "ignored"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.mqtt.device_id, "fromenv");
        assert_eq!(config.mqtt.qos, 2);
        assert_eq!(
            config.mqtt.publish.mode,
            crate::mqtt::policy::PublishMode::OnChange
        );
        assert_eq!(config.state_dir(), PathBuf::from("/var/lib/x"));
        assert_eq!(config.model.manifest, ModelConfig::default().manifest);
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let err = parse(Path::new("t.toml"), "[pipeline]\nskip = 1\n", env(&[]))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.toml") && err.contains("pipeline.skip"),
            "{err}"
        );
        let err = parse(
            Path::new("t.toml"),
            "",
            env(&[("GLIMPSE_MQTT__QOS", "'high'")]),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(err.contains("mqtt.qos"), "{err}");
    }

    fn error_of(text: &str, vars: &[(&str, &str)]) -> String {
        parse(Path::new("t.toml"), text, env(vars))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_from_variables_name_the_variable_not_the_file() {
        let err = error_of("", &[("GLIMPSE_MQTT__QOS", "7")]);
        assert!(err.contains("GLIMPSE_MQTT__QOS"), "{err}");
        assert!(!err.contains("t.toml"), "{err}");
        let err = error_of("", &[("GLIMPSE_MQTT__QOS", "'high'")]);
        assert!(
            err.contains("GLIMPSE_MQTT__QOS") && err.contains("mqtt.qos"),
            "{err}"
        );
        let err = error_of("", &[("GLIMPSE_LEARNING__RECENT_FRAMES", "100000000")]);
        assert!(err.contains("GLIMPSE_LEARNING__RECENT_FRAMES"), "{err}");
        // The same key set in the file is still blamed on the file.
        let err = error_of("[mqtt]\nqos = 7\n", &[("GLIMPSE_MQTT__DEVICE_ID", "x")]);
        assert!(err.contains("t.toml") && err.contains("mqtt.qos"), "{err}");
    }

    #[test]
    fn an_empty_state_dir_is_refused() {
        let err = error_of("", &[("GLIMPSE_STATE_DIR", "")]);
        assert!(
            err.contains("GLIMPSE_STATE_DIR") && err.contains("empty"),
            "{err}"
        );
        let err = error_of("state_dir = ''\n", &[]);
        assert!(err.contains("t.toml") && err.contains("state_dir"), "{err}");
    }

    #[test]
    fn later_checks_name_the_variable_that_set_a_key() {
        let config = parse(
            Path::new("/etc/glimpse/glimpse.toml"),
            "",
            env(&[("GLIMPSE_MODEL__MANIFEST", "/nope/model.toml")]),
        )
        .unwrap();
        let message = config.name_variables("model.manifest: /nope/model.toml: no such file");
        assert_eq!(
            message,
            "GLIMPSE_MODEL__MANIFEST (model.manifest): /nope/model.toml: no such file"
        );
        let from_file = parse(Path::new("t.toml"), "", env(&[])).unwrap();
        assert_eq!(
            from_file.name_variables("model.manifest: x"),
            "model.manifest: x"
        );
    }

    #[test]
    fn ranges_of_threads_and_recent_frames_are_bounded() {
        let err = error_of("[model]\nthreads = 1000\n", &[]);
        assert!(err.contains("model.threads"), "{err}");
        let err = error_of("[learning]\nrecent_frames = 100000000\n", &[]);
        assert!(err.contains("learning.recent_frames"), "{err}");
        let max = format!("[model]\nthreads = {MAX_MODEL_THREADS}\n[learning]\nrecent_frames = {MAX_RECENT_FRAMES}\n");
        assert!(parse(Path::new("t.toml"), &max, env(&[])).is_ok());
    }

    #[test]
    fn log_level_must_name_levels() {
        for good in ["info", "WARN", "off", "warn,glimpse::mqtt=debug", " debug "] {
            assert_eq!(validate_log_level(good), Ok(()), "{good}");
        }
        for bad in ["verbose", "", " , ", "glimpse=loud", "=info", "info,chatty"] {
            assert!(validate_log_level(bad).is_err(), "{bad:?} passed");
        }
        let err = error_of("[log]\nlevel = 'verbose'\n", &[]);
        assert!(
            err.contains("log.level") && err.contains("verbose"),
            "{err}"
        );
    }
}

//! Arguments and helpers shared by the subcommands: which model manifest, how many threads, how an
//! image is fitted into the model input, the broker URL of the operator tools, and the error type
//! that maps to exit code 2.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::vision::backbone::{set_threads, Backbone, BackboneOptions};
use crate::vision::engine::{Device, EngineKind, EngineOptions, Precision};
use crate::vision::manifest::ModelManifest;
use crate::vision::spec::ResizeMode;

/// The manifest used when none is given: the float32 MobileNetV2 next to this repository.
pub const DEFAULT_MANIFEST: &str = "models/mobilenet_v2_1.0_224.toml";

/// The broker URL variable shared by the daemon (`mqtt.url`) and the operator tools.
pub const BROKER_URL_ENV: &str = "GLIMPSE_MQTT__URL";
/// The operator tools' former name for it, still read (with a warning) when the new one is unset.
pub const DEPRECATED_BROKER_URL_ENV: &str = "GLIMPSE_MQTT_URL";
/// The broker URL when neither `--url` nor a variable gives one.
pub const DEFAULT_BROKER_URL: &str = "mqtt://localhost:1883";

/// The operator tools' broker URL: `--url` (clap also fills it from [`BROKER_URL_ENV`]), else
/// the deprecated [`DEPRECATED_BROKER_URL_ENV`] with a warning to print, else the default.
/// Pure: the caller reads the deprecated variable and prints the warning.
pub fn resolve_broker_url(
    flag_or_env: Option<&str>,
    deprecated: Option<&str>,
) -> (String, Option<String>) {
    match (flag_or_env, deprecated.filter(|v| !v.is_empty())) {
        (Some(url), _) => (url.to_string(), None),
        (None, Some(old)) => (
            old.to_string(),
            Some(format!(
                "{DEPRECATED_BROKER_URL_ENV} is deprecated: set {BROKER_URL_ENV} (the daemon's \
                 name for the same setting)"
            )),
        ),
        (None, None) => (DEFAULT_BROKER_URL.to_string(), None),
    }
}

/// [`resolve_broker_url`] with the process environment, printing the deprecation warning.
pub fn broker_url(flag_or_env: Option<&str>) -> String {
    let old = std::env::var(DEPRECATED_BROKER_URL_ENV).ok();
    let (url, warning) = resolve_broker_url(flag_or_env, old.as_deref());
    if let Some(warning) = warning {
        eprintln!("glimpse: warning: {warning}");
    }
    url
}

/// An error in what the user asked for (bad configuration, missing model): exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model manifest (TOML) describing the backbone; see docs/models.md.
    #[arg(long, env = "GLIMPSE_MODEL", default_value = DEFAULT_MANIFEST)]
    pub model: PathBuf,
    /// Backbone inference threads (0 = one per core, at most 4).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Crop the centered region with the model's aspect ratio before resizing, instead of
    /// resizing the whole image (the default, as in the Keras transfer-learning tutorial).
    #[arg(long)]
    pub center_crop: bool,
    /// Backbone engine (config: model.engine).
    #[arg(long, value_enum, default_value_t = EngineKind::Tract)]
    pub engine: EngineKind,
    /// Where the engine runs the model (config: model.device); cuda/tensorrt need onnxruntime.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Backbone precision (config: model.precision); fp16 needs --device tensorrt, or tract on
    /// a CPU with fp16 arithmetic (asimdhp: Xavier, Orin).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// tract: run convolutions channel-last (config: model.tract_nhwc).
    #[arg(long)]
    pub tract_nhwc: bool,
    /// libonnxruntime.so to load (config: model.onnxruntime_library); default ORT_DYLIB_PATH,
    /// else libonnxruntime.so on the library path.
    #[arg(long)]
    pub onnxruntime_library: Option<PathBuf>,
}

/// Resolves a thread-count request: 0 means one per available core, capped at 4 (a Jetson Nano
/// has 4 cores; more threads than cores only adds contention).
pub fn resolve_threads(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

impl ModelArgs {
    pub fn resize_mode(&self) -> ResizeMode {
        if self.center_crop {
            ResizeMode::CenterCrop
        } else {
            ResizeMode::Stretch
        }
    }

    /// The engine the flags ask for. The TensorRT cache goes to the system's temporary
    /// directory: the tools have no state directory.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            engine: self.engine,
            device: self.device,
            precision: self.precision,
            onnxruntime_library: self.onnxruntime_library.clone(),
            cache_dir: Some(std::env::temp_dir().join("glimpse-tensorrt")),
            tract_nhwc: self.tract_nhwc,
        }
    }

    /// Loads the manifest and the backbone; any failure here is a configuration error.
    pub fn load_backbone(&self) -> anyhow::Result<Arc<Backbone>> {
        let manifest = ModelManifest::load(&self.model).map_err(|e| ConfigError(e.to_string()))?;
        let threads = resolve_threads(self.threads);
        set_threads(threads);
        let options = BackboneOptions {
            threads,
            engine: self.engine_options(),
        };
        let backbone = Backbone::load(&manifest, &options)
            .map_err(|e| ConfigError(e.to_string()))
            .with_context(|| format!("loading model {}", self.model.display()))?;
        Ok(Arc::new(backbone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_url_prefers_the_flag_then_the_new_variable_then_the_old_one() {
        // clap puts --url, else GLIMPSE_MQTT__URL, into the first argument.
        assert_eq!(
            resolve_broker_url(Some("mqtt://a:1"), Some("mqtt://old:2")),
            ("mqtt://a:1".to_string(), None)
        );
        let (url, warning) = resolve_broker_url(None, Some("mqtt://old:2"));
        assert_eq!(url, "mqtt://old:2");
        let warning = warning.expect("a deprecation warning");
        assert!(
            warning.contains("GLIMPSE_MQTT_URL is deprecated")
                && warning.contains("GLIMPSE_MQTT__URL"),
            "{warning}"
        );
        assert_eq!(
            resolve_broker_url(None, None),
            (DEFAULT_BROKER_URL.to_string(), None)
        );
        assert_eq!(
            resolve_broker_url(None, Some("")),
            (DEFAULT_BROKER_URL.to_string(), None)
        );
    }
}

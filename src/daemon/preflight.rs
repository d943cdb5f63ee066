//! The start-up checks `glimpse run` and `glimpse check-config` share, so that a configuration
//! check-config accepts is one the daemon starts with: the model manifest, the model file (its
//! sha256 and whether tract can load it), the thread count, the MQTT credentials and TLS files,
//! and the state directory. Everything here is a configuration error (exit code 2).

use std::sync::Arc;

use super::DaemonError;
use crate::config::Config;
use crate::vision::backbone::{set_threads, Backbone, BackboneError, BackboneOptions};
use crate::vision::manifest::ModelManifest;

/// What passed the checks, ready for the daemon to use.
pub struct Checked {
    pub manifest: ModelManifest,
    pub backbone: Arc<Backbone>,
}

/// Runs every start-up check that does not need the source or the broker.
pub fn preflight(config: &Config) -> Result<Checked, DaemonError> {
    let config_error = |message: String| DaemonError::Config(config.name_variables(&message));
    // The manifest's own message names the file; the prefix names the key.
    let manifest = ModelManifest::load(&config.model.manifest)
        .map_err(|e| config_error(format!("model.manifest: {e}")))?;
    if !manifest.model_path().exists() {
        return Err(config_error(format!(
            "model.manifest {}: model file {} does not exist (glimpse fetch-model {} downloads it)",
            config.model.manifest.display(),
            manifest.model_path().display(),
            config.model.manifest.display()
        )));
    }
    let threads = crate::cli::common::resolve_threads(config.model.threads);
    set_threads(threads);
    // Loading checks the sha256 the manifest gives and that the file is a usable ONNX model: a
    // garbage or truncated file fails here, not after READY.
    let options = BackboneOptions {
        threads,
        engine: config.engine_options(),
    };
    // Engine errors (library, provider) name their own key; the rest are the model's.
    let backbone = Backbone::load(&manifest, &options).map_err(|e| match e {
        BackboneError::OnnxRuntime(_)
        | BackboneError::Provider { .. }
        | BackboneError::Combination(_) => config_error(e.to_string()),
        e => config_error(format!("model.manifest: {e}")),
    })?;
    log::info!(
        "backbone: engine {}, provider {}",
        options.engine.id(),
        backbone.provider()
    );
    let topics = config
        .mqtt
        .topics()
        .map_err(|e| config_error(e.to_string()))?;
    // Reads the password and TLS files, as the link will.
    crate::mqtt::link::mqtt_options(&config.mqtt, &topics)
        .map_err(|e| config_error(e.to_string()))?;
    let state_dir = config.state_dir();
    if state_dir.exists() && !state_dir.is_dir() {
        return Err(config_error(format!(
            "state_dir {}: exists and is not a directory",
            state_dir.display()
        )));
    }
    Ok(Checked {
        manifest,
        backbone: Arc::new(backbone),
    })
}

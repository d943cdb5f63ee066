//! Arguments and helpers shared by the subcommands: which model manifest, how many threads, how an
//! image is fitted into the model input, and the error type that maps to exit code 2.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::vision::backbone::{set_threads, Backbone, BackboneOptions};
use crate::vision::manifest::ModelManifest;
use crate::vision::spec::ResizeMode;

/// The manifest used when none is given: the float32 MobileNetV2 next to this repository.
pub const DEFAULT_MANIFEST: &str = "models/mobilenet_v2_1.0_224.toml";

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

    /// Loads the manifest and the backbone; any failure here is a configuration error.
    pub fn load_backbone(&self) -> anyhow::Result<Arc<Backbone>> {
        let manifest = ModelManifest::load(&self.model).map_err(|e| ConfigError(e.to_string()))?;
        let threads = resolve_threads(self.threads);
        set_threads(threads);
        let backbone = Backbone::load(&manifest, &BackboneOptions { threads })
            .map_err(|e| ConfigError(e.to_string()))
            .with_context(|| format!("loading model {}", self.model.display()))?;
        Ok(Arc::new(backbone))
    }
}

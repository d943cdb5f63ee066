//! Small plain types shared across the vision and learn modules: what a model wants as input
//! (`InputSpec`), and which backbone an embedding came from (`Fingerprint`).

use serde::{Deserialize, Serialize};

/// Memory layout of the model's input tensor (batch 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// `[1, 3, H, W]`: one plane per channel (PyTorch / ONNX zoo style).
    Nchw,
    /// `[1, H, W, 3]`: interleaved channels (TensorFlow / TFLite style).
    Nhwc,
}

/// How an image is fitted into the model's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Resize the whole image to the model size, ignoring aspect ratio (the Keras tutorial's way,
    /// and what the reference tensors in ../shared were made with).
    #[default]
    Stretch,
    /// Crop the largest centered region with the model's aspect ratio, then resize it.
    CenterCrop,
}

/// What the backbone expects as input: size, layout and per-channel normalization.
///
/// A pixel value `v` in 0..=255 of channel `c` becomes `(v / pixel_scale - mean[c]) / std[c]`.
/// With `pixel_scale = 255` and mean/std in 0..1 this is the torchvision convention; with
/// `pixel_scale = 1`, mean = std = 127.5 it is the TF-Hub `[-1, 1]` convention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pixel_scale: f32,
}

impl InputSpec {
    /// Number of f32 values in one input tensor (batch 1).
    pub fn tensor_len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }
}

/// Identifies the exact backbone output an embedding (and so a head) belongs to.
/// A head trained on one fingerprint must not be used with another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    /// sha256 (lowercase hex) of the ONNX model file.
    pub model_sha256: String,
    /// Name of the tensor the embedding is read from.
    pub embedding_tensor: String,
    /// Length of the embedding vector.
    pub dim: usize,
    /// `engine/device/precision` that computed the embeddings (see `vision::engine`). Absent
    /// in files written before there was a choice, which all came from tract on the CPU; not
    /// written for that default, so those files and their sample keys stay as they were.
    #[serde(default = "default_engine", skip_serializing_if = "is_default_engine")]
    pub engine: String,
}

/// The engine every fingerprint without an `engine` field came from.
pub const DEFAULT_ENGINE: &str = "tract/cpu/fp32";

fn default_engine() -> String {
    DEFAULT_ENGINE.to_string()
}

fn is_default_engine(engine: &str) -> bool {
    engine == DEFAULT_ENGINE
}

impl Fingerprint {
    /// Same model file, tensor and size: the embeddings differ at most by the engine's
    /// arithmetic (what the cross-engine check measures).
    pub fn same_model(&self, other: &Fingerprint) -> bool {
        self.model_sha256 == other.model_sha256
            && self.embedding_tensor == other.embedding_tensor
            && self.dim == other.dim
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short = self.model_sha256.get(..12).unwrap_or(&self.model_sha256);
        write!(f, "{short}:{}[{}]", self.embedding_tensor, self.dim)?;
        if !is_default_engine(&self.engine) {
            write!(f, "@{}", self.engine)?;
        }
        Ok(())
    }
}

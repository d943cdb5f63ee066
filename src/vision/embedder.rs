//! Image bytes (or a decoded image) to an embedding: decode, preprocess into a reused tensor
//! buffer, run the backbone. One `Embedder` per worker thread; the backbone is shared (`Arc`)
//! because tract's runnable model is `Send + Sync` and holds the weights once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;

use super::backbone::{Backbone, BackboneError, BackboneOutput};
use super::preprocess::{decode_image, DecodeLimits, PreprocessError, Preprocessor};
use super::spec::ResizeMode;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot decode image: {0}")]
    Decode(#[from] PreprocessError),
    #[error("backbone failed: {0}")]
    Backbone(#[from] BackboneError),
}

/// Time spent in each stage of one embedding.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub decode: Duration,
    pub preprocess: Duration,
    pub backbone: Duration,
}

/// Decoder + preprocessor + backbone, with the input tensor buffer reused across calls.
pub struct Embedder {
    backbone: Arc<Backbone>,
    preprocessor: Preprocessor,
    limits: DecodeLimits,
    input: Vec<f32>,
}

impl Embedder {
    pub fn new(backbone: Arc<Backbone>, mode: ResizeMode, limits: DecodeLimits) -> Self {
        let preprocessor = Preprocessor::new(backbone.input_spec(), mode);
        let input = Vec::with_capacity(backbone.input_spec().tensor_len());
        Self {
            backbone,
            preprocessor,
            limits,
            input,
        }
    }

    pub fn backbone(&self) -> &Arc<Backbone> {
        &self.backbone
    }

    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// Decodes an encoded image (JPEG, PNG, BMP) and embeds it.
    pub fn embed_bytes(
        &mut self,
        bytes: &[u8],
    ) -> Result<(BackboneOutput, StageTimes), EmbedError> {
        let started = Instant::now();
        let image = decode_image(bytes, &self.limits)?;
        let decode = started.elapsed();
        let (output, mut times) = self.embed_image(&image)?;
        times.decode = decode;
        Ok((output, times))
    }

    /// Embeds an already decoded image.
    pub fn embed_image(
        &mut self,
        image: &RgbImage,
    ) -> Result<(BackboneOutput, StageTimes), EmbedError> {
        let started = Instant::now();
        self.preprocessor.run(image, &mut self.input)?;
        let preprocessed = Instant::now();
        let output = self.backbone.run(&self.input)?;
        let times = StageTimes {
            decode: Duration::ZERO,
            preprocess: preprocessed - started,
            backbone: preprocessed.elapsed(),
        };
        Ok((output, times))
    }
}

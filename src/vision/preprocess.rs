//! An RGB image to the backbone's input tensor: fit it to the model size (stretch or center crop,
//! bilinear, SIMD through fast_image_resize) and normalize each channel into f32 with a lookup
//! table, in the layout the model wants (NCHW planes or NHWC interleaved).
//!
//! A `Preprocessor` is built once per model and reused for every frame: the resizer, its
//! destination image and the tables live in it, so a frame costs no allocation after the first
//! and no per-pixel arithmetic beyond the filter and one table load per value.
//!
//! Decoding (bytes to `RgbImage`) lives in `super::decode`; its API is re-exported here so callers
//! find the whole pipeline in one place.

use fast_image_resize as fr;
use image::RgbImage;

use super::spec::{InputSpec, Layout, ResizeMode};

pub use super::decode::{decode_image, decode_raw, synthetic_jpeg, DecodeLimits, PixelFormat};

/// Why an image could not be turned into a tensor.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("image payload is empty (0 bytes)")]
    Empty,
    #[error("image payload is {bytes} bytes, over the {limit}-byte limit")]
    TooLarge { bytes: usize, limit: usize },
    #[error("image is {width}x{height}, over the {limit}-pixel limit (refused before decoding)")]
    TooManyPixels { width: u32, height: u32, limit: u64 },
    #[error("image format not recognized (JPEG, PNG or BMP expected), first bytes: {head}")]
    UnknownFormat { head: String },
    #[error("corrupt {0}")]
    Corrupt(String),
    #[error("raw {format} frame {width}x{height} should be {expected} bytes, got {actual}")]
    BadRawFrame {
        format: PixelFormat,
        width: u32,
        height: u32,
        expected: usize,
        actual: usize,
    },
    #[error("raw {format} frame {width}x{height} is unusable: {why}")]
    BadFrameGeometry {
        format: PixelFormat,
        width: u32,
        height: u32,
        why: &'static str,
    },
    #[error("cannot preprocess a {width}x{height} image")]
    EmptyImage { width: u32, height: u32 },
    #[error("resizing {src_width}x{src_height} to the model input failed: {detail}")]
    Resize {
        src_width: u32,
        src_height: u32,
        detail: String,
    },
}

/// A pixel rectangle of the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRect {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

/// The largest centered rectangle of a `src_w` x `src_h` image with the aspect ratio of
/// `dst_w` x `dst_h` (whole pixels, rounded to nearest; the odd leftover pixel goes right/bottom).
pub fn center_crop(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> CropRect {
    let (sw, sh, dw, dh) = (
        u64::from(src_w),
        u64::from(src_h),
        u64::from(dst_w),
        u64::from(dst_h),
    );
    if dw == 0 || dh == 0 {
        return CropRect {
            left: 0,
            top: 0,
            width: src_w,
            height: src_h,
        };
    }
    // Compare sw/sh with dw/dh without division; u32 * u32 fits in u64.
    let (width, height) = if sw * dh > sh * dw {
        (((sh * dw + dh / 2) / dh).clamp(1, sw), sh) // source is wider: trim the sides
    } else {
        (sw, ((sw * dh + dw / 2) / dw).clamp(1, sh)) // source is taller: trim top and bottom
    };
    // Both fit in u32: each is clamped to a source side.
    let (width, height) = (width as u32, height as u32);
    CropRect {
        left: (src_w - width) / 2,
        top: (src_h - height) / 2,
        width,
        height,
    }
}

/// Per-channel tables mapping a pixel value 0..=255 to `(v / pixel_scale - mean) / std`.
pub fn normalization_tables(spec: &InputSpec) -> [[f32; 256]; 3] {
    let mut tables = [[0.0; 256]; 3];
    for (c, table) in tables.iter_mut().enumerate() {
        for (v, slot) in table.iter_mut().enumerate() {
            *slot = (v as f32 / spec.pixel_scale - spec.mean[c]) / spec.std[c];
        }
    }
    tables
}

/// Resizes and normalizes images for one model input. Build once, reuse per frame.
pub struct Preprocessor {
    spec: InputSpec,
    mode: ResizeMode,
    resizer: fr::Resizer,
    /// The resized image, `spec.width` x `spec.height` RGB8, reused across calls.
    resized: fr::images::Image<'static>,
    tables: [[f32; 256]; 3],
}

impl Preprocessor {
    /// Precomputes the tables and allocates the resize target for `spec`.
    ///
    /// The spec is trusted (the manifest validates it): a zero size makes `run` fail, and a zero
    /// std would produce infinities.
    pub fn new(spec: &InputSpec, mode: ResizeMode) -> Self {
        Preprocessor {
            spec: spec.clone(),
            mode,
            resizer: fr::Resizer::new(),
            resized: fr::images::Image::new(spec.width, spec.height, fr::PixelType::U8x3),
            tables: normalization_tables(spec),
        }
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    pub fn mode(&self) -> ResizeMode {
        self.mode
    }

    /// Fits `image` to the model size and writes the normalized tensor into `out` (resized to
    /// `spec.tensor_len()`; its capacity is kept, so reusing one `Vec` avoids allocations).
    pub fn run(&mut self, image: &RgbImage, out: &mut Vec<f32>) -> Result<(), PreprocessError> {
        let (src_w, src_h) = image.dimensions();
        if src_w == 0 || src_h == 0 || self.spec.width == 0 || self.spec.height == 0 {
            return Err(PreprocessError::EmptyImage {
                width: src_w,
                height: src_h,
            });
        }
        let crop = match self.mode {
            ResizeMode::Stretch => CropRect {
                left: 0,
                top: 0,
                width: src_w,
                height: src_h,
            },
            ResizeMode::CenterCrop => center_crop(src_w, src_h, self.spec.width, self.spec.height),
        };
        let already_fits = crop.width == self.spec.width
            && crop.height == self.spec.height
            && (crop.width, crop.height) == (src_w, src_h);
        let pixels: &[u8] = if already_fits {
            image.as_raw()
        } else {
            self.resize(image, crop)?;
            self.resized.buffer()
        };
        out.clear();
        out.resize(self.spec.tensor_len(), 0.0);
        normalize(pixels, &self.tables, self.spec.layout, out);
        Ok(())
    }

    /// `decode_image` then `run`.
    pub fn run_bytes(
        &mut self,
        bytes: &[u8],
        limits: &DecodeLimits,
        out: &mut Vec<f32>,
    ) -> Result<(), PreprocessError> {
        let image = decode_image(bytes, limits)?;
        self.run(&image, out)
    }

    fn resize(&mut self, image: &RgbImage, crop: CropRect) -> Result<(), PreprocessError> {
        let (src_width, src_height) = image.dimensions();
        let failed = |detail: String| PreprocessError::Resize {
            src_width,
            src_height,
            detail,
        };
        let src =
            fr::images::ImageRef::new(src_width, src_height, image.as_raw(), fr::PixelType::U8x3)
                .map_err(|e| failed(e.to_string()))?;
        // Convolution with the bilinear kernel widens the kernel when shrinking (antialiasing, like
        // Pillow); the reference tensors match it far better than fixed-size interpolation does.
        let options = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
            .crop(
                f64::from(crop.left),
                f64::from(crop.top),
                f64::from(crop.width),
                f64::from(crop.height),
            );
        self.resizer
            .resize(&src, &mut self.resized, &options)
            .map_err(|e| failed(e.to_string()))
    }
}

/// Packed RGB8 pixels to normalized f32 in `layout`; `out.len()` is 3 * pixel count.
fn normalize(pixels: &[u8], tables: &[[f32; 256]; 3], layout: Layout, out: &mut [f32]) {
    let [red, green, blue] = tables;
    match layout {
        Layout::Nhwc => {
            for (px, dst) in pixels.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
                dst[0] = red[usize::from(px[0])];
                dst[1] = green[usize::from(px[1])];
                dst[2] = blue[usize::from(px[2])];
            }
        }
        Layout::Nchw => {
            let plane = out.len() / 3;
            let (r_plane, rest) = out.split_at_mut(plane);
            let (g_plane, b_plane) = rest.split_at_mut(plane);
            let planes = r_plane
                .iter_mut()
                .zip(g_plane.iter_mut())
                .zip(b_plane.iter_mut());
            for (px, ((r, g), b)) in pixels.chunks_exact(3).zip(planes) {
                *r = red[usize::from(px[0])];
                *g = green[usize::from(px[1])];
                *b = blue[usize::from(px[2])];
            }
        }
    }
}

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
    #[error(
        "image is {width}x{height} and would decode to {bytes} bytes, over the {limit}-byte \
         budget (3 bytes x the pixel limit; refused before decoding)"
    )]
    TooManyBytes {
        width: u32,
        height: u32,
        bytes: u64,
        limit: u64,
    },
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
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
        if (crop.width, crop.height) == (src_width, src_height) {
            return self
                .resizer
                .resize(&src, &mut self.resized, &options)
                .map_err(|e| failed(e.to_string()));
        }
        // A cropped view rather than ResizeOptions::crop: the latter lets the filter read pixels
        // outside the crop box, so the cut-off borders would bleed into the model input.
        let cropped =
            fr::images::CroppedImage::new(&src, crop.left, crop.top, crop.width, crop.height)
                .map_err(|e| failed(e.to_string()))?;
        self.resizer
            .resize(&cropped, &mut self.resized, &options)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(width: u32, height: u32, layout: Layout) -> InputSpec {
        InputSpec {
            width,
            height,
            layout,
            mean: [0.5; 3],
            std: [0.5; 3],
            pixel_scale: 255.0,
        }
    }

    fn noisy_image(width: u32, height: u32) -> RgbImage {
        let mut state = 7u32;
        RgbImage::from_fn(width, height, |_, _| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let [a, b, c, _] = state.to_le_bytes();
            image::Rgb([a, b, c])
        })
    }

    #[test]
    fn preprocessor_can_move_to_a_worker_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Preprocessor>();
    }

    #[test]
    fn center_crop_keeps_the_model_aspect_ratio_centered() {
        let crop = |sw, sh, dw, dh| {
            let c = center_crop(sw, sh, dw, dh);
            (c.left, c.top, c.width, c.height)
        };
        assert_eq!(crop(640, 480, 224, 224), (80, 0, 480, 480));
        assert_eq!(crop(480, 640, 224, 224), (0, 80, 480, 480));
        assert_eq!(crop(641, 480, 224, 224), (80, 0, 480, 480));
        assert_eq!(crop(224, 224, 224, 224), (0, 0, 224, 224));
        assert_eq!(crop(1000, 500, 448, 224), (0, 0, 1000, 500));
        assert_eq!(crop(1000, 1000, 300, 200), (0, 166, 1000, 667));
        assert_eq!(crop(1, 1000, 224, 224), (0, 499, 1, 1));
    }

    #[test]
    fn center_crop_mode_ignores_the_side_bands() {
        // 640x480: red bands of 80 columns each side, blue 480x480 center.
        let image = RgbImage::from_fn(640, 480, |x, _| {
            if (80..560).contains(&x) {
                image::Rgb([0, 0, 255])
            } else {
                image::Rgb([255, 0, 0])
            }
        });
        let mut out = Vec::new();
        let mut pre = Preprocessor::new(&spec(224, 224, Layout::Nchw), ResizeMode::CenterCrop);
        pre.run(&image, &mut out).unwrap();
        let plane = 224 * 224;
        assert!(
            out[..plane].iter().all(|&r| r == -1.0),
            "red leaked into the crop"
        );
        assert!(out[2 * plane..].iter().all(|&b| b == 1.0));

        let mut stretch = Preprocessor::new(&spec(224, 224, Layout::Nchw), ResizeMode::Stretch);
        stretch.run(&image, &mut out).unwrap();
        assert_eq!(out[0], 1.0, "stretch keeps the red band at the left edge");
    }

    #[test]
    fn tables_follow_both_normalization_conventions() {
        let tf = InputSpec {
            mean: [127.5; 3],
            std: [127.5; 3],
            pixel_scale: 1.0,
            ..spec(224, 224, Layout::Nhwc)
        };
        for table in normalization_tables(&tf) {
            assert_eq!((table[0], table[255]), (-1.0, 1.0));
        }
        let torchvision = InputSpec {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            ..spec(224, 224, Layout::Nchw)
        };
        let tables = normalization_tables(&torchvision);
        for (table, (mean, std)) in tables
            .iter()
            .zip(torchvision.mean.iter().zip(&torchvision.std))
        {
            assert!((table[0] - -mean / std).abs() < 1e-6);
            assert!((table[255] - (1.0 - mean) / std).abs() < 1e-6);
        }
        assert!((tables[0][0] - -2.117_904).abs() < 1e-5);
        assert!((tables[2][255] - 2.64).abs() < 1e-5);
    }

    #[test]
    fn nhwc_output_is_the_exact_transpose_of_nchw() {
        let image = noisy_image(97, 61);
        let (mut nchw, mut nhwc) = (Vec::new(), Vec::new());
        Preprocessor::new(&spec(32, 24, Layout::Nchw), ResizeMode::Stretch)
            .run(&image, &mut nchw)
            .unwrap();
        Preprocessor::new(&spec(32, 24, Layout::Nhwc), ResizeMode::Stretch)
            .run(&image, &mut nhwc)
            .unwrap();
        assert_eq!(nchw.len(), 3 * 32 * 24);
        for i in 0..32 * 24 {
            for c in 0..3 {
                assert_eq!(
                    nhwc[i * 3 + c],
                    nchw[c * 32 * 24 + i],
                    "pixel {i} channel {c}"
                );
            }
        }
    }

    #[test]
    fn image_of_model_size_is_normalized_without_resampling() {
        let image = noisy_image(16, 8);
        let mut out = Vec::new();
        let mut pre = Preprocessor::new(&spec(16, 8, Layout::Nhwc), ResizeMode::CenterCrop);
        pre.run(&image, &mut out).unwrap();
        let expected: Vec<f32> = image
            .as_raw()
            .iter()
            .map(|&v| (f32::from(v) / 255.0 - 0.5) / 0.5)
            .collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn reuse_across_sizes_matches_a_fresh_preprocessor_and_keeps_the_buffer() {
        let s = spec(40, 30, Layout::Nchw);
        let mut reused = Preprocessor::new(&s, ResizeMode::CenterCrop);
        let mut out = Vec::new();
        reused.run(&noisy_image(200, 90), &mut out).unwrap();
        let buffer = out.as_ptr();
        let second = noisy_image(50, 120);
        reused.run(&second, &mut out).unwrap();
        assert_eq!(out.as_ptr(), buffer, "output buffer was reallocated");
        let mut fresh = Vec::new();
        Preprocessor::new(&s, ResizeMode::CenterCrop)
            .run(&second, &mut fresh)
            .unwrap();
        assert_eq!(out, fresh);
    }

    #[test]
    fn empty_image_and_bad_bytes_are_errors() {
        let mut pre = Preprocessor::new(&spec(8, 8, Layout::Nchw), ResizeMode::Stretch);
        let mut out = Vec::new();
        let err = pre.run(&RgbImage::new(0, 5), &mut out).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::EmptyImage {
                    width: 0,
                    height: 5
                }
            ),
            "{err}"
        );
        let err = pre
            .run_bytes(b"GIF89a....", &DecodeLimits::default(), &mut out)
            .unwrap_err();
        assert!(
            matches!(err, PreprocessError::UnknownFormat { .. }),
            "{err}"
        );
    }

    #[test]
    fn run_bytes_equals_decode_then_run() {
        let jpeg = synthetic_jpeg(120, 80, 90).unwrap();
        let mut pre = Preprocessor::new(&spec(24, 24, Layout::Nhwc), ResizeMode::Stretch);
        let (mut direct, mut staged) = (Vec::new(), Vec::new());
        pre.run_bytes(&jpeg, &DecodeLimits::default(), &mut direct)
            .unwrap();
        let image = decode_image(&jpeg, &DecodeLimits::default()).unwrap();
        pre.run(&image, &mut staged).unwrap();
        assert_eq!(direct, staged);
    }
}

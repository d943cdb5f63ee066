//! Bytes to an RGB image: encoded files (JPEG, PNG, BMP, recognized by content, never by name)
//! and raw camera frames (RGB24, YUYV 4:2:2, MJPEG).
//!
//! Everything here faces outside data (uploads over MQTT, files, camera frames), so every size is
//! checked before memory is committed to it: the payload length against `max_bytes`, then the
//! dimensions read from the header against `max_pixels`, then the decoded size (width x height x
//! channels x bytes per channel, as the decoder will produce it) against
//! [`DecodeLimits::max_decoded_bytes`], and only then the decoder runs. A PNG that claims to be
//! 30000x30000 is refused after reading 24 bytes; a 16-bit RGBA PNG (8 bytes a pixel) within the
//! pixel cap but not within the byte budget is refused before its pixel data is inflated.
//!
//! Encoded images are turned upright from their EXIF orientation (phones store photos sideways
//! and set the tag), so a sample, a classified file and a replayed file mean what a person sees.

mod jpeg_markers;

use std::fmt;
use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

use super::preprocess::PreprocessError;

/// Pixel layout of a raw camera frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// 3 bytes per pixel, R G B, rows packed without padding.
    Rgb24,
    /// YUV 4:2:2, 4 bytes per 2 pixels (Y0 U Y1 V), BT.601 limited range: most USB webcams.
    Yuyv,
    /// One JPEG image per frame, possibly without Huffman tables.
    Mjpeg,
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Mjpeg => "mjpeg",
        })
    }
}

/// Upper bounds on what a decoder may be asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeLimits {
    /// Largest accepted payload (encoded file or raw frame), in bytes.
    pub max_bytes: usize,
    /// Largest accepted image, in pixels (width * height).
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 32 MiB and 50 megapixels: above any camera or phone photo, below what hurts a Jetson
    /// (50 MP of RGB8 is 150 MB).
    fn default() -> Self {
        DecodeLimits {
            max_bytes: 32 << 20,
            max_pixels: 50_000_000,
        }
    }
}

/// Bytes per pixel of the 8-bit RGB images this module returns.
const RGB8_BYTES: u64 = 3;

impl DecodeLimits {
    /// The largest decoded buffer a decoder may fill: what an 8-bit RGB image at `max_pixels`
    /// takes. Memory follows bytes, not pixels: a 16-bit RGBA image (8 bytes a pixel) may have at
    /// most 3/8 of `max_pixels`, an 8-bit RGBA one 3/4. Decoding one image holds at most twice
    /// this at once (the decoded buffer, then the RGB copy or the rotated copy).
    pub fn max_decoded_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(RGB8_BYTES)
    }

    fn check_decoded_bytes(
        &self,
        width: u32,
        height: u32,
        bytes: u64,
    ) -> Result<(), PreprocessError> {
        let limit = self.max_decoded_bytes();
        if bytes > limit {
            return Err(PreprocessError::TooManyBytes {
                width,
                height,
                bytes,
                limit,
            });
        }
        Ok(())
    }

    fn check_bytes(&self, len: usize) -> Result<(), PreprocessError> {
        if len == 0 {
            return Err(PreprocessError::Empty);
        }
        if len > self.max_bytes {
            return Err(PreprocessError::TooLarge {
                bytes: len,
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    fn check_pixels(&self, width: u32, height: u32) -> Result<(), PreprocessError> {
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(PreprocessError::TooManyPixels {
                width,
                height,
                limit: self.max_pixels,
            });
        }
        Ok(())
    }
}

/// The encoded formats we accept, told apart by their leading bytes.
fn sniff_format(bytes: &[u8]) -> Result<ImageFormat, PreprocessError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(ImageFormat::Png)
    } else if bytes.starts_with(b"BM") {
        Ok(ImageFormat::Bmp)
    } else {
        let head = bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        Err(PreprocessError::UnknownFormat { head })
    }
}

fn corrupt(format: ImageFormat, detail: impl fmt::Display) -> PreprocessError {
    PreprocessError::Corrupt(format!("{}: {detail}", format_name(format)))
}

fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::Bmp => "BMP",
        _ => "image",
    }
}

fn u32_at(bytes: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(word)
    } else {
        u32::from_le_bytes(word)
    })
}

/// Image size as declared by the header, read without constructing a decoder. For JPEG this also
/// checks that the stream is complete (see `jpeg_markers::has_end_marker`).
fn declared_dimensions(format: ImageFormat, bytes: &[u8]) -> Result<(u32, u32), PreprocessError> {
    let truncated = || corrupt(format, "truncated header");
    match format {
        ImageFormat::Png => {
            // Signature (8), then the IHDR chunk: length (4), "IHDR", width, height (big endian).
            if bytes.get(12..16) != Some(b"IHDR") {
                return Err(corrupt(format, "first chunk is not IHDR"));
            }
            let width = u32_at(bytes, 16, true).ok_or_else(truncated)?;
            let height = u32_at(bytes, 20, true).ok_or_else(truncated)?;
            Ok((width, height))
        }
        ImageFormat::Bmp => {
            // File header (14), then the DIB header: its size picks the old OS/2 layout (u16
            // sizes) or the Windows one (i32 sizes; a negative height means top-down rows).
            let dib_size = u32_at(bytes, 14, false).ok_or_else(truncated)?;
            if dib_size == 12 {
                let at = |i: usize| {
                    bytes
                        .get(i..i + 2)
                        .map(|p| u32::from(u16::from_le_bytes([p[0], p[1]])))
                };
                Ok((at(18).ok_or_else(truncated)?, at(20).ok_or_else(truncated)?))
            } else {
                let width = u32_at(bytes, 18, false).ok_or_else(truncated)? as i32;
                let height = u32_at(bytes, 22, false).ok_or_else(truncated)? as i32;
                if width < 0 {
                    return Err(corrupt(format, format!("negative width {width}")));
                }
                Ok((width.unsigned_abs(), height.unsigned_abs()))
            }
        }
        _ => {
            let header = jpeg_markers::scan_header(bytes).map_err(|e| corrupt(format, e))?;
            if !jpeg_markers::has_end_marker(bytes, &header) {
                return Err(corrupt(
                    format,
                    "truncated: no end-of-image marker after the scan data",
                ));
            }
            Ok((header.width, header.height))
        }
    }
}

/// Decodes a JPEG, PNG or BMP file to 8-bit RGB (alpha is dropped, gray is replicated), turned
/// upright from its EXIF orientation.
///
/// The format comes from the content. Sizes are checked in this order, each before any work that
/// depends on it: payload length, then the header's dimensions, then the decoded size the decoder
/// announces from the header (its real channel count and bit depth, e.g. a palette PNG expands to
/// RGB); the decoder is then held to those same dimensions and that byte budget through image's
/// own `Limits`, in case its reading of the header differs. A damaged EXIF block is ignored (the
/// image is used as stored) rather than refusing a decodable image.
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PreprocessError> {
    limits.check_bytes(bytes.len())?;
    let format = sniff_format(bytes)?;
    let (width, height) = declared_dimensions(format, bytes)?;
    if width == 0 || height == 0 {
        return Err(corrupt(
            format,
            format!("header declares a {width}x{height} image"),
        ));
    }
    limits.check_pixels(width, height)?;

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(width);
    image_limits.max_image_height = Some(height);
    image_limits.max_alloc = Some(limits.max_decoded_bytes());
    reader.limits(image_limits);
    let mut decoder = reader.into_decoder().map_err(|e| corrupt(format, e))?;
    limits.check_decoded_bytes(width, height, decoder.total_bytes())?;
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        log::debug!(
            "{}: unreadable EXIF orientation ignored: {e}",
            format_name(format)
        );
        Orientation::NoTransforms
    });
    let decoded = DynamicImage::from_decoder(decoder).map_err(|e| corrupt(format, e))?;
    Ok(upright(decoded.into_rgb8(), orientation))
}

/// Applies an EXIF orientation to an RGB image (converted first, so a rotation copies 3 bytes a
/// pixel, not the decoder's 4 or 8).
fn upright(image: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return image;
    }
    let mut image = DynamicImage::ImageRgb8(image);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

/// Converts one raw camera frame to 8-bit RGB.
///
/// `width` and `height` are what the camera negotiated; the payload length must match them
/// exactly for RGB24 and YUYV (a short or long frame means a misconfigured source, and guessing
/// would silently produce a sheared image). For MJPEG the JPEG header is authoritative; frames
/// without Huffman tables get the standard ones.
pub fn decode_raw(
    format: PixelFormat,
    width: u32,
    height: u32,
    data: &[u8],
    limits: &DecodeLimits,
) -> Result<RgbImage, PreprocessError> {
    limits.check_bytes(data.len())?;
    if format == PixelFormat::Mjpeg {
        return decode_mjpeg(data, limits);
    }
    if width == 0 || height == 0 {
        return Err(PreprocessError::BadFrameGeometry {
            format,
            width,
            height,
            why: "zero size",
        });
    }
    if format == PixelFormat::Yuyv && !width.is_multiple_of(2) {
        // A YUYV macro-pixel covers two columns; V4L2 never negotiates an odd width for it.
        return Err(PreprocessError::BadFrameGeometry {
            format,
            width,
            height,
            why: "odd width",
        });
    }
    limits.check_pixels(width, height)?;
    let bytes_per_pixel = if format == PixelFormat::Rgb24 { 3 } else { 2 };
    // Fits in usize: pixels <= max_pixels and the payload already fits in memory.
    let expected = width as usize * height as usize * bytes_per_pixel;
    if data.len() != expected {
        return Err(PreprocessError::BadRawFrame {
            format,
            width,
            height,
            expected,
            actual: data.len(),
        });
    }
    let rgb = match format {
        PixelFormat::Yuyv => yuyv_to_rgb(data),
        _ => data.to_vec(),
    };
    RgbImage::from_raw(width, height, rgb).ok_or(PreprocessError::BadRawFrame {
        format,
        width,
        height,
        expected,
        actual: data.len(),
    })
}

fn decode_mjpeg(data: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PreprocessError> {
    let header = jpeg_markers::scan_header(data).map_err(|e| corrupt(ImageFormat::Jpeg, e))?;
    if header.has_huffman_tables {
        decode_image(data, limits)
    } else {
        decode_image(&jpeg_markers::with_standard_huffman_tables(data), limits)
    }
}

/// YUYV (Y0 U Y1 V per pixel pair) to packed RGB, BT.601 limited range, in 8.8 fixed point: the
/// integer form of R = 1.164(Y-16) + 1.596(V-128) etc. used by V4L2 and Microsoft's docs.
fn yuyv_to_rgb(data: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(data.len() / 2 * 3);
    for quad in data.chunks_exact(4) {
        let d = i32::from(quad[1]) - 128;
        let e = i32::from(quad[3]) - 128;
        let (r_uv, g_uv, b_uv) = (409 * e + 128, -100 * d - 208 * e + 128, 516 * d + 128);
        for y in [quad[0], quad[2]] {
            let c = 298 * (i32::from(y) - 16);
            rgb.push(((c + r_uv) >> 8).clamp(0, 255) as u8);
            rgb.push(((c + g_uv) >> 8).clamp(0, 255) as u8);
            rgb.push(((c + b_uv) >> 8).clamp(0, 255) as u8);
        }
    }
    rgb
}

/// A deterministic test image (diagonal gradients plus pseudo-random noise, so it compresses
/// like a photo rather than a flat card) encoded as baseline JPEG. For tests and benchmarks.
pub fn synthetic_jpeg(width: u32, height: u32, quality: u8) -> Result<Vec<u8>, PreprocessError> {
    let mut state: u32 = 0x9E37_79B9;
    let image = RgbImage::from_fn(width, height, |x, y| {
        // xorshift32: cheap, dependency-free noise.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let noise = state & 0x1F;
        let channel = |ramp: u32| (ramp * 224 / 256 + noise) as u8; // <= 223 + 31: no wrap
        let r = channel(x * 255 / width.max(1));
        let g = channel(y * 255 / height.max(1));
        let b = channel((x + y) * 255 / (width + height).max(1));
        image::Rgb([r, g, b])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&image)
        .map_err(|e| PreprocessError::Corrupt(format!("encoding the synthetic JPEG: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    /// CRC-32 (IEEE, reflected), as PNG chunks need it.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A PNG made of the signature, an IHDR for `width` x `height` RGB8, and IEND: no pixel data.
    fn png_header_only(width: u32, height: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, body) in [
            (
                *b"IHDR",
                [
                    &width.to_be_bytes()[..],
                    &height.to_be_bytes(),
                    &[8, 2, 0, 0, 0],
                ]
                .concat(),
            ),
            (*b"IEND", Vec::new()),
        ] {
            png.extend_from_slice(&(body.len() as u32).to_be_bytes());
            let typed = [&kind[..], &body].concat();
            png.extend_from_slice(&typed);
            png.extend_from_slice(&crc32(&typed).to_be_bytes());
        }
        png
    }

    fn encode(image: &RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn small_test_image() -> RgbImage {
        RgbImage::from_fn(37, 21, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 12) as u8, ((x + y) * 4) as u8])
        })
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn empty_payload_is_refused() {
        assert!(matches!(
            decode_image(&[], &limits()),
            Err(PreprocessError::Empty)
        ));
        assert!(matches!(
            decode_raw(PixelFormat::Rgb24, 1, 1, &[], &limits()),
            Err(PreprocessError::Empty)
        ));
    }

    #[test]
    fn oversized_payload_is_refused_before_sniffing() {
        let small = DecodeLimits {
            max_bytes: 100,
            ..limits()
        };
        let err = decode_image(&[0u8; 101], &small).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooLarge {
                    bytes: 101,
                    limit: 100
                }
            ),
            "{err}"
        );
        let frame = vec![0u8; 10 * 10 * 3];
        let err = decode_raw(PixelFormat::Rgb24, 10, 10, &frame, &small).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooLarge {
                    bytes: 300,
                    limit: 100
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn text_is_an_unknown_format_named_by_its_first_bytes() {
        let err = decode_image(b"hello, this is not an image", &limits()).unwrap_err();
        assert!(
            matches!(&err, PreprocessError::UnknownFormat { head } if head == "68 65 6c 6c 6f 2c 20 74"),
            "{err}"
        );
    }

    #[test]
    fn png_bomb_header_is_refused_from_its_ihdr() {
        let bomb = png_header_only(30_000, 30_000);
        assert_eq!(bomb.len(), 8 + 25 + 12);
        let err = decode_image(&bomb, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooManyPixels {
                    width: 30_000,
                    height: 30_000,
                    limit: 50_000_000
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn huge_jpeg_and_bmp_headers_are_refused() {
        // SOF0 declaring 65535x65535, followed by SOS and EOI.
        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0x11, 0, 0xFF,
            0xDA, 0x00, 0x02, 0xFF, 0xD9,
        ];
        let err = decode_image(&jpeg, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooManyPixels {
                    width: 65535,
                    height: 65535,
                    ..
                }
            ),
            "{err}"
        );

        let mut bmp = encode(&small_test_image(), ImageFormat::Bmp);
        bmp[18..22].copy_from_slice(&20_000i32.to_le_bytes());
        bmp[22..26].copy_from_slice(&(-20_000i32).to_le_bytes()); // top-down: negative height
        let err = decode_image(&bmp, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooManyPixels {
                    width: 20_000,
                    height: 20_000,
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A PNG of `width` x `height` in `color` (8 or 16 bits per channel), from a gradient.
    fn png_of(width: u32, height: u32, color: image::ExtendedColorType) -> Vec<u8> {
        use image::ImageEncoder;
        let bytes_per_pixel = usize::from(color.bits_per_pixel() / 8);
        let data: Vec<u8> = (0..width as usize * height as usize * bytes_per_pixel)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&data, width, height, color)
            .unwrap();
        out
    }

    #[test]
    fn the_byte_budget_counts_channels_and_bit_depth() {
        use image::ExtendedColorType::{Rgb8, Rgba16, Rgba8};
        // 64x48 pixels: the budget is what 64x48 RGB8 takes, 9216 bytes.
        let cap = DecodeLimits {
            max_pixels: 64 * 48,
            ..limits()
        };
        assert_eq!(cap.max_decoded_bytes(), 9216);
        assert_eq!(
            decode_image(&png_of(64, 48, Rgb8), &cap)
                .unwrap()
                .dimensions(),
            (64, 48)
        );
        // 16-bit RGBA at the pixel cap is 8 bytes a pixel: refused from its header.
        let err = decode_image(&png_of(64, 48, Rgba16), &cap).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooManyBytes {
                    width: 64,
                    height: 48,
                    bytes: 24_576,
                    limit: 9216
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("refused before decoding"), "{err}");
        // 8-bit RGBA: exactly at the budget (48x48x4 = 9216) passes, one column more does not.
        assert!(decode_image(&png_of(48, 48, Rgba8), &cap).is_ok());
        let err = decode_image(&png_of(49, 48, Rgba8), &cap).unwrap_err();
        assert!(
            matches!(err, PreprocessError::TooManyBytes { bytes: 9408, .. }),
            "{err}"
        );
    }

    #[test]
    fn png_and_bmp_decode_losslessly_whatever_they_are_called() {
        let original = small_test_image();
        for format in [ImageFormat::Png, ImageFormat::Bmp] {
            let decoded = decode_image(&encode(&original, format), &limits()).unwrap();
            assert_eq!(decoded, original, "{format:?}");
        }
    }

    #[test]
    fn truncated_jpeg_is_corrupt_not_a_gray_filled_image() {
        let jpeg = synthetic_jpeg(640, 480, 90).unwrap();
        assert_eq!(
            decode_image(&jpeg, &limits()).unwrap().dimensions(),
            (640, 480)
        );
        for cut in [jpeg.len() / 2, jpeg.len() - 2] {
            let err = decode_image(&jpeg[..cut], &limits()).unwrap_err();
            assert!(
                matches!(&err, PreprocessError::Corrupt(m) if m.contains("truncated")),
                "{err}"
            );
        }
    }

    #[test]
    fn every_prefix_and_many_bit_flips_fail_cleanly() {
        // Robustness: outside bytes must give Ok or a typed error, never a panic.
        let sources = [
            synthetic_jpeg(24, 16, 80).unwrap(),
            encode(&small_test_image(), ImageFormat::Png),
            encode(&small_test_image(), ImageFormat::Bmp),
        ];
        for source in &sources {
            for cut in 0..source.len() {
                let _ = decode_image(&source[..cut], &limits());
            }
            let mut state = 12345u32;
            for _ in 0..300 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let mut mutated = source.clone();
                let at = (state >> 8) as usize % mutated.len();
                mutated[at] ^= 1 << (state % 8);
                let _ = decode_image(&mutated, &limits());
            }
        }
    }

    #[test]
    fn yuyv_known_colors_convert_exactly() {
        // BT.601 limited range macro-pixels (Y0 U Y1 V): white, black, pure red.
        let frame = [235, 128, 235, 128, 16, 128, 16, 128, 81, 90, 81, 240];
        let rgb = decode_raw(PixelFormat::Yuyv, 6, 1, &frame, &limits()).unwrap();
        let expected = [
            [255, 255, 255],
            [255, 255, 255],
            [0, 0, 0],
            [0, 0, 0],
            [255, 0, 0],
            [255, 0, 0],
        ];
        let got: Vec<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn yuyv_rejects_wrong_length_and_odd_width() {
        let err = decode_raw(PixelFormat::Yuyv, 4, 2, &[0; 15], &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::BadRawFrame {
                    expected: 16,
                    actual: 15,
                    ..
                }
            ),
            "{err}"
        );
        let err = decode_raw(PixelFormat::Yuyv, 3, 2, &[0; 12], &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::BadFrameGeometry {
                    why: "odd width",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.to_string(), "raw yuyv frame 3x2 is unusable: odd width");
    }

    #[test]
    fn rgb24_passes_through_and_checks_its_length() {
        let data: Vec<u8> = (0..2 * 3 * 3).collect();
        let rgb = decode_raw(PixelFormat::Rgb24, 2, 3, &data, &limits()).unwrap();
        assert_eq!((rgb.dimensions(), rgb.as_raw()), ((2, 3), &data));
        let err = decode_raw(PixelFormat::Rgb24, 3, 3, &data, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::BadRawFrame {
                    expected: 27,
                    actual: 18,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "raw rgb24 frame 3x3 should be 27 bytes, got 18"
        );
        let err = decode_raw(PixelFormat::Rgb24, 0, 3, &data, &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::BadFrameGeometry {
                    why: "zero size",
                    ..
                }
            ),
            "{err}"
        );
        let tiny = DecodeLimits {
            max_pixels: 5,
            ..limits()
        };
        let err = decode_raw(PixelFormat::Rgb24, 2, 3, &data, &tiny).unwrap_err();
        assert!(
            matches!(
                err,
                PreprocessError::TooManyPixels {
                    width: 2,
                    height: 3,
                    limit: 5
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn mjpeg_without_huffman_tables_gets_the_standard_ones() {
        // image's JPEG encoder writes the Annex K tables, so stripping and re-inserting them
        // must reproduce the original decode bit for bit.
        let jpeg = synthetic_jpeg(64, 48, 85).unwrap();
        let stripped = jpeg_markers::strip_huffman_tables(&jpeg);
        assert!(stripped.len() < jpeg.len());
        let err = decode_image(&stripped, &limits()).unwrap_err();
        assert!(matches!(err, PreprocessError::Corrupt(_)), "{err}");
        let expected = decode_image(&jpeg, &limits()).unwrap();
        for frame in [&jpeg, &stripped] {
            let rgb = decode_raw(PixelFormat::Mjpeg, 64, 48, frame, &limits()).unwrap();
            assert_eq!(rgb, expected);
        }
    }

    #[test]
    fn pixel_format_names_round_trip_through_serde() {
        for format in [PixelFormat::Rgb24, PixelFormat::Yuyv, PixelFormat::Mjpeg] {
            let json = serde_json::to_string(&format).unwrap();
            assert_eq!(json, format!("\"{format}\""));
            assert_eq!(serde_json::from_str::<PixelFormat>(&json).unwrap(), format);
        }
    }
}

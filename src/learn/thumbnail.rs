//! Small JPEG thumbnails of samples and recent frames: what the store keeps next to each
//! embedding, so an operator can export and review what the device was taught.

use fast_image_resize as fr;
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;

/// JPEG quality of thumbnails: small files, still recognisable.
const QUALITY: u8 = 80;

/// `image` scaled so its longest side is at most `max_side` (aspect kept), as JPEG bytes.
/// `None` only if the encoder fails, which for an in-memory RGB image does not happen.
///
/// The pipeline makes one of these for every frame on the decode thread, so the shrink goes
/// through fast_image_resize's SIMD box filter (an area average, as `imageops::thumbnail` does)
/// rather than image's scalar loop, which cost as much as the model's resize and normalize.
pub fn jpeg_thumbnail(image: &RgbImage, max_side: u32) -> Option<Vec<u8>> {
    let (w, h) = image.dimensions();
    let longest = w.max(h).max(1);
    let scale = (max_side.max(1) as f32 / longest as f32).min(1.0);
    let tw = ((w as f32 * scale).round() as u32).max(1);
    let th = ((h as f32 * scale).round() as u32).max(1);
    let small = shrink(image, tw, th)?;
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, QUALITY)
        .encode_image(&small)
        .ok()?;
    Some(out)
}

/// `image` box-filtered to `tw` x `th`; the image itself when that is its size. `None` for an
/// empty image, which no decoder produces.
fn shrink(image: &RgbImage, tw: u32, th: u32) -> Option<RgbImage> {
    let (w, h) = image.dimensions();
    if (tw, th) == (w, h) {
        return Some(image.clone());
    }
    let src = fr::images::ImageRef::new(w, h, image.as_raw(), fr::PixelType::U8x3).ok()?;
    let mut dst = fr::images::Image::new(tw, th, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Box));
    fr::Resizer::new().resize(&src, &mut dst, &options).ok()?;
    RgbImage::from_raw(tw, th, dst.into_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_aspect_and_decodes() {
        let image = RgbImage::from_pixel(300, 200, image::Rgb([10, 200, 30]));
        let bytes = jpeg_thumbnail(&image, 96).unwrap();
        let back = image::load_from_memory(&bytes).unwrap();
        assert_eq!((back.width(), back.height()), (96, 64));
        let tiny = RgbImage::from_pixel(20, 10, image::Rgb([0, 0, 0]));
        let back = image::load_from_memory(&jpeg_thumbnail(&tiny, 96).unwrap()).unwrap();
        assert_eq!((back.width(), back.height()), (20, 10));
    }
}

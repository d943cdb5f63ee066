//! The `frame/thumbnail` payload: a small JPEG of a processed frame that names its `frame_id` in a
//! JPEG comment (COM segment, `glimpse frame_id=1234`), so a dashboard can label exactly the
//! frame it shows with a `frame_id` sample. The bytes stay a plain JPEG any viewer opens.

/// Thumbnails larger than this are not published: a bound for subscribers whatever
/// `learning.thumbnail_px` is (a 96 px frame is a few KB, see docs/mqtt.md).
pub const MAX_THUMBNAIL_BYTES: usize = 64 * 1024;

const SOI: [u8; 2] = [0xFF, 0xD8];
const COM: [u8; 2] = [0xFF, 0xFE];
const TAG: &str = "glimpse frame_id=";

/// `jpeg` with a comment segment naming `frame_id` right after the start-of-image marker;
/// `None` when `jpeg` does not start like a JPEG.
pub fn tag_frame(jpeg: &[u8], frame_id: u64) -> Option<Vec<u8>> {
    let rest = jpeg.strip_prefix(&SOI)?;
    let text = format!("{TAG}{frame_id}");
    // The segment length counts its own two length bytes, not the marker.
    let len = u16::try_from(text.len() + 2).ok()?;
    let mut out = Vec::with_capacity(jpeg.len() + text.len() + 6);
    out.extend_from_slice(&SOI);
    out.extend_from_slice(&COM);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(rest);
    Some(out)
}

/// The `frame_id` named by [`tag_frame`]'s comment, if the JPEG starts with one.
pub fn frame_of(jpeg: &[u8]) -> Option<u64> {
    let rest = jpeg.strip_prefix(&SOI)?.strip_prefix(&COM)?;
    let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let text = std::str::from_utf8(rest.get(2..len)?).ok()?;
    text.strip_prefix(TAG)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_round_trips_and_the_jpeg_still_decodes() {
        let image = image::RgbImage::from_pixel(40, 30, image::Rgb([200, 10, 10]));
        let jpeg = crate::learn::thumbnail::jpeg_thumbnail(&image, 96).unwrap();
        let tagged = tag_frame(&jpeg, 1234).unwrap();
        assert_eq!(frame_of(&tagged), Some(1234));
        assert_eq!(frame_of(&jpeg), None);
        let back = image::load_from_memory(&tagged).unwrap();
        assert_eq!((back.width(), back.height()), (40, 30));
        assert_eq!(tag_frame(b"not a jpeg", 1), None);
        assert_eq!(frame_of(&[0xFF, 0xD8, 0xFF, 0xFE, 0x00]), None);
    }
}

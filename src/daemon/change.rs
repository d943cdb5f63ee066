//! Cheap "did the scene change?" test for skipping frames that barely differ from the last one
//! processed: a 32x32 grey thumbnail and the mean absolute difference between thumbnails. A fixed
//! camera watching an empty scene then costs a decode and a few thousand additions per frame
//! instead of a backbone pass.

use image::RgbImage;

/// Side of the square grey thumbnail compared between frames.
pub const THUMB_SIDE: u32 = 32;

/// A small grey summary of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail(Vec<u8>);

impl Thumbnail {
    /// Box-averages `image` down to 32x32 grey (integer BT.601 luma weights).
    pub fn of(image: &RgbImage) -> Self {
        let (w, h) = image.dimensions();
        let side = THUMB_SIDE as usize;
        let mut sums = vec![0u64; side * side];
        let mut counts = vec![0u64; side * side];
        if w == 0 || h == 0 {
            return Self(vec![0; side * side]);
        }
        for (x, y, p) in image.enumerate_pixels() {
            let cell = (y as usize * side / h as usize) * side + (x as usize * side / w as usize);
            let luma = (77 * p[0] as u64 + 150 * p[1] as u64 + 29 * p[2] as u64) >> 8;
            sums[cell] += luma;
            counts[cell] += 1;
        }
        Self(
            sums.iter()
                .zip(&counts)
                .map(|(s, c)| if *c == 0 { 0 } else { (s / c) as u8 })
                .collect(),
        )
    }

    /// Mean absolute difference, 0..=255.
    pub fn difference(&self, other: &Thumbnail) -> f32 {
        let total: u64 = self
            .0
            .iter()
            .zip(&other.0)
            .map(|(a, b)| a.abs_diff(*b) as u64)
            .sum();
        total as f32 / self.0.len().max(1) as f32
    }
}

/// Decides per frame whether it changed enough from the last processed frame to be worth a
/// backbone pass. A threshold of 0 processes every frame.
#[derive(Debug, Default)]
pub struct ChangeFilter {
    threshold: f32,
    last: Option<Thumbnail>,
}

impl ChangeFilter {
    pub fn new(threshold: f32) -> Self {
        Self {
            threshold,
            last: None,
        }
    }

    /// True when the frame should be processed (and becomes the new reference).
    pub fn should_process(&mut self, image: &RgbImage) -> bool {
        if self.threshold <= 0.0 {
            return true;
        }
        let thumb = Thumbnail::of(image);
        let changed = match &self.last {
            Some(last) => thumb.difference(last) >= self.threshold,
            None => true,
        };
        if changed {
            self.last = Some(thumb);
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: u8) -> RgbImage {
        RgbImage::from_pixel(64, 48, image::Rgb([v, v, v]))
    }

    #[test]
    fn difference_of_flat_images_is_the_grey_step() {
        let d = Thumbnail::of(&flat(100)).difference(&Thumbnail::of(&flat(110)));
        assert!((d - 10.0).abs() <= 1.0, "{d}");
        assert_eq!(
            Thumbnail::of(&flat(5)).difference(&Thumbnail::of(&flat(5))),
            0.0
        );
    }

    #[test]
    fn filter_skips_small_changes_and_keeps_big_ones() {
        let mut filter = ChangeFilter::new(4.0);
        assert!(filter.should_process(&flat(100)), "first frame always");
        assert!(!filter.should_process(&flat(101)));
        assert!(
            !filter.should_process(&flat(102)),
            "compared with the last processed"
        );
        assert!(filter.should_process(&flat(120)));
        let mut off = ChangeFilter::new(0.0);
        assert!(off.should_process(&flat(1)) && off.should_process(&flat(1)));
    }
}

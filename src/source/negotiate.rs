//! Picks a camera mode (pixel format, size, frame rate) from what a device offers. Pure, so every
//! rule is tested without a camera; the V4L2 layer only lists modes and applies the choice.
//!
//! Rules, in order: the pixel format (the preferred one if offered, else MJPEG, then YUYV, then
//! RGB: MJPEG first because USB 2 webcams reach full frame rates only compressed), then the
//! resolution nearest to the request, then the frame rate nearest to the request at that
//! resolution. Formats we cannot decode (GRAY, NV12, BGR) are never chosen.

use super::FormatPreference;
use crate::vision::preprocess::PixelFormat;
use std::fmt;

/// Pixel formats a V4L2 device may offer through nokhwa.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaptureFormat {
    Mjpeg,
    Yuyv,
    Rgb24,
    Bgr24,
    Gray,
    Nv12,
}

impl CaptureFormat {
    /// The format the pipeline decodes this into, if it can.
    pub fn pixel_format(self) -> Option<PixelFormat> {
        match self {
            Self::Mjpeg => Some(PixelFormat::Mjpeg),
            Self::Yuyv => Some(PixelFormat::Yuyv),
            Self::Rgb24 => Some(PixelFormat::Rgb24),
            Self::Bgr24 | Self::Gray | Self::Nv12 => None,
        }
    }
}

impl fmt::Display for CaptureFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mjpeg => "MJPEG",
            Self::Yuyv => "YUYV",
            Self::Rgb24 => "RGB3",
            Self::Bgr24 => "BGR3",
            Self::Gray => "GRAY",
            Self::Nv12 => "NV12",
        })
    }
}

/// One mode a device can stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OfferedFormat {
    pub format: CaptureFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl fmt::Display for OfferedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{} {} @{}fps",
            self.width, self.height, self.format, self.fps
        )
    }
}

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    pub width: u32,
    pub height: u32,
    pub fps: f32,
    pub format: FormatPreference,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}x{} {} @{}fps",
            self.width, self.height, self.format, self.fps
        )
    }
}

/// The decision, with what was asked, what was chosen and why (logged at info).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub requested: Request,
    pub chosen: OfferedFormat,
    /// True when format (if one was named), size and fps all match the request.
    pub exact: bool,
    /// One short clause per decision: format, size, fps.
    pub reasons: Vec<String>,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "asked {}, chose {} ({})",
            self.requested,
            self.chosen,
            if self.exact {
                "exact match".to_string()
            } else {
                self.reasons.join("; ")
            }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("the camera offers no modes at all")]
    NothingOffered,
    #[error("the camera offers only formats glimpse cannot decode ({offered}); need MJPEG, YUYV or RGB3")]
    NoDecodableFormat { offered: String },
}

/// The order in which formats are tried for a preference.
fn format_order(pref: FormatPreference) -> [CaptureFormat; 3] {
    use CaptureFormat::{Mjpeg, Rgb24, Yuyv};
    match pref {
        FormatPreference::Auto | FormatPreference::Mjpeg => [Mjpeg, Yuyv, Rgb24],
        FormatPreference::Yuyv => [Yuyv, Mjpeg, Rgb24],
        FormatPreference::Rgb => [Rgb24, Mjpeg, Yuyv],
    }
}

/// Chooses the mode to stream. See the module doc for the rules.
pub fn negotiate(offered: &[OfferedFormat], want: &Request) -> Result<Choice, NegotiationError> {
    if offered.is_empty() {
        return Err(NegotiationError::NothingOffered);
    }
    let order = format_order(want.format);
    let Some(format) = order
        .iter()
        .copied()
        .find(|f| offered.iter().any(|o| o.format == *f))
    else {
        let mut names: Vec<String> = offered.iter().map(|o| o.format.to_string()).collect();
        names.sort();
        names.dedup();
        return Err(NegotiationError::NoDecodableFormat {
            offered: names.join(", "),
        });
    };
    let mut reasons = Vec::new();
    let named = want.format != FormatPreference::Auto;
    let format_ok = !named || order[0] == format;
    if format != order[0] {
        reasons.push(format!("{format}: {} not offered", order[0]));
    } else if !named {
        reasons.push(format!("{format}: preferred by auto"));
    }

    let modes: Vec<OfferedFormat> = offered
        .iter()
        .copied()
        .filter(|o| o.format == format)
        .collect();
    // Nearest size by |dw| + |dh|; on a tie the larger one, since downscaling keeps detail.
    let size_key = |o: &&OfferedFormat| {
        let d = o.width.abs_diff(want.width) + o.height.abs_diff(want.height);
        (
            d,
            std::cmp::Reverse(u64::from(o.width) * u64::from(o.height)),
        )
    };
    let Some(best_size) = modes.iter().min_by_key(size_key) else {
        return Err(NegotiationError::NothingOffered);
    };
    let (w, h) = (best_size.width, best_size.height);
    let size_ok = w == want.width && h == want.height;
    if !size_ok {
        reasons.push(format!(
            "{w}x{h}: nearest {format} size to {}x{}",
            want.width, want.height
        ));
    }

    // Nearest fps at that size; on a tie the faster one (frames can be skipped, not invented).
    let at_size = modes.iter().filter(|o| o.width == w && o.height == h);
    let fps_dist = |o: &&OfferedFormat| (f64::from(o.fps) - f64::from(want.fps)).abs();
    let Some(chosen) = at_size.min_by(|a, b| {
        fps_dist(a)
            .total_cmp(&fps_dist(b))
            .then_with(|| b.fps.cmp(&a.fps))
    }) else {
        return Err(NegotiationError::NothingOffered);
    };
    let fps_ok = fps_dist(&chosen) < 0.5;
    if !fps_ok {
        reasons.push(format!(
            "{}fps: nearest to {}fps at {w}x{h}",
            chosen.fps, want.fps
        ));
    }
    Ok(Choice {
        requested: *want,
        chosen: *chosen,
        exact: format_ok && size_ok && fps_ok,
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaptureFormat::*;

    fn mode(format: CaptureFormat, width: u32, height: u32, fps: u32) -> OfferedFormat {
        OfferedFormat {
            format,
            width,
            height,
            fps,
        }
    }

    fn req(width: u32, height: u32, fps: f32, format: FormatPreference) -> Request {
        Request {
            width,
            height,
            fps,
            format,
        }
    }

    /// A typical UVC webcam: MJPEG everywhere at 30, YUYV fast only when small.
    fn webcam() -> Vec<OfferedFormat> {
        vec![
            mode(Yuyv, 640, 480, 30),
            mode(Yuyv, 640, 480, 15),
            mode(Yuyv, 1280, 720, 10),
            mode(Mjpeg, 640, 480, 30),
            mode(Mjpeg, 640, 480, 15),
            mode(Mjpeg, 1280, 720, 30),
            mode(Gray, 640, 480, 30),
        ]
    }

    #[test]
    fn exact_request_is_taken_as_is() {
        let c = negotiate(&webcam(), &req(640, 480, 15.0, FormatPreference::Mjpeg));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.chosen, mode(Mjpeg, 640, 480, 15));
        assert!(c.exact, "{c}");
        assert!(c.to_string().contains("exact match"), "{c}");
    }

    #[test]
    fn auto_prefers_mjpeg_over_yuyv() {
        let c = negotiate(&webcam(), &req(640, 480, 30.0, FormatPreference::Auto));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.chosen, mode(Mjpeg, 640, 480, 30));
        assert!(c.exact);
    }

    #[test]
    fn yuyv_when_asked_even_if_mjpeg_exists() {
        let c = negotiate(&webcam(), &req(1280, 720, 30.0, FormatPreference::Yuyv));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.chosen, mode(Yuyv, 1280, 720, 10));
        assert!(!c.exact);
        assert!(c.reasons.iter().any(|r| r.contains("10fps")), "{c}");
    }

    #[test]
    fn falls_back_to_yuyv_when_mjpeg_is_not_offered() {
        let offered = [mode(Yuyv, 640, 480, 30), mode(Rgb24, 640, 480, 30)];
        let c = negotiate(&offered, &req(640, 480, 30.0, FormatPreference::Mjpeg));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.chosen.format, Yuyv);
        assert!(!c.exact);
        assert!(c.to_string().contains("MJPEG not offered"), "{c}");
    }

    #[test]
    fn falls_back_to_rgb_as_the_last_decodable_format() {
        let offered = [mode(Nv12, 640, 480, 30), mode(Rgb24, 320, 240, 30)];
        let c = negotiate(&offered, &req(640, 480, 30.0, FormatPreference::Auto));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.chosen, mode(Rgb24, 320, 240, 30));
        assert!(c.reasons.iter().any(|r| r.contains("320x240")), "{c}");
    }

    #[test]
    fn nearest_resolution_then_nearest_fps() {
        let offered = [
            mode(Mjpeg, 320, 240, 30),
            mode(Mjpeg, 800, 600, 5),
            mode(Mjpeg, 800, 600, 20),
            mode(Mjpeg, 1920, 1080, 30),
        ];
        let c = negotiate(&offered, &req(640, 480, 15.0, FormatPreference::Auto));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.chosen, mode(Mjpeg, 800, 600, 20));
    }

    #[test]
    fn ties_prefer_larger_size_and_faster_fps() {
        let offered = [
            mode(Mjpeg, 600, 460, 10),
            mode(Mjpeg, 680, 500, 10),
            mode(Mjpeg, 680, 500, 20),
        ];
        let c = negotiate(&offered, &req(640, 480, 15.0, FormatPreference::Auto));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.chosen, mode(Mjpeg, 680, 500, 20));
    }

    #[test]
    fn undecodable_only_is_an_error_naming_the_formats() {
        let offered = [mode(Gray, 640, 480, 30), mode(Nv12, 640, 480, 30)];
        let e = negotiate(&offered, &req(640, 480, 30.0, FormatPreference::Auto));
        let msg = e.map(|c| c.to_string()).unwrap_or_else(|e| e.to_string());
        assert!(msg.contains("GRAY, NV12"), "{msg}");
    }

    #[test]
    fn nothing_offered_is_an_error() {
        assert_eq!(
            negotiate(&[], &req(640, 480, 30.0, FormatPreference::Auto)),
            Err(NegotiationError::NothingOffered)
        );
    }

    #[test]
    fn pixel_format_mapping() {
        assert_eq!(Mjpeg.pixel_format(), Some(PixelFormat::Mjpeg));
        assert_eq!(Yuyv.pixel_format(), Some(PixelFormat::Yuyv));
        assert_eq!(Rgb24.pixel_format(), Some(PixelFormat::Rgb24));
        assert_eq!(Nv12.pixel_format(), None);
    }
}
